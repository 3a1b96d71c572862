"""Models lmms-eval loads from this plugin: name -> class name in ``models.<name>``."""

AVAILABLE_MODELS = {"omnizip_qwen_omni": "OmniZipQwenOmni"}
