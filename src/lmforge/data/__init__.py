"""Raw text to token shards: readers, cleaning, filters, deduplication, mixing and tokenization."""
