"""Helpers of the vLLM server tests (tests/test_vllm_server*.py): a real ``vllm serve`` process
started from the vLLM environment, and token counts computed independently of the plugin."""
