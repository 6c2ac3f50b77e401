"""Load generation: phases, the streaming client, prompts, and one cell's load test."""
