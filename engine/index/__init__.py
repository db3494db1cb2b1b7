"""Image indexes: the SQLite catalogue, the FAISS vector index, the store on disk, folder builds,
search and export."""
