"""The torch-free query server: QueryService and its HTTP app."""
