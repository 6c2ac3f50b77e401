"""The engine catalog, server lifecycle, /metrics scraping and the llama-server build."""
