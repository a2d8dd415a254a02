"""Token and prompt constants shared with the original LLaVA code base."""

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200  # placeholder id that tokenizer_image_token puts where "<image>" stood
DEFAULT_IMAGE_TOKEN = "<image>"
VIDEO_TOKEN_INDEX = -201  # placeholder id where "<video>" stood (the model splices the whole clip's tokens there)
DEFAULT_VIDEO_TOKEN = "<video>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
