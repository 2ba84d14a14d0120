"""Video-LLMs: the tiny offline Qwen2.5-VL (``tiny``) and loading from the config (``loading``)."""
