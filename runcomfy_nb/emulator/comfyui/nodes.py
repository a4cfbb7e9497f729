"""ComfyUI 0.3.64's limits and names, the node classes' `/object_info` (a data table) and the GPUs."""

from __future__ import annotations

from typing import Any

VERSION = "0.3.64"
MAX_HISTORY = 10_000
MAX_UPLOAD = 100 * 1024 * 1024
MAX_RESOLUTION = 16384
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
FOLDER_TYPES = ("output", "input", "temp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4
JPEG = 1

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
    "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
    "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]
SAMPLER_CLASSES = {"KSampler"}
BACKEND_FAULTS = {"server_error", "http_error", "drop", "delay"}
# Classes with a VALIDATE_INPUTS taking these inputs: ComfyUI skips the combo check for them
CUSTOM_VALIDATION = {"LoadImage": {"image"}}


def _tip(text: str, **options: Any) -> dict[str, Any]:
    return {**options, "tooltip": text}


def node_info(name: str, required: dict[str, Any], output: list[str], *, category: str,
          display: str | None = None, optional: dict[str, Any] | None = None,
          hidden: dict[str, str] | None = None, output_node: bool = False, module: str = "nodes",
          description: str = "", output_names: list[str] | None = None,
          output_tooltips: list[str] | None = None) -> dict[str, Any]:
    inputs: dict[str, Any] = {"required": required}
    if optional is not None:
        inputs["optional"] = optional
    if hidden is not None:
        inputs["hidden"] = hidden
    info: dict[str, Any] = {
        "input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
        "output": output, "output_is_list": [False] * len(output), "output_name": output_names or output,
        "name": name, "display_name": display or name, "description": description,
        "python_module": module, "category": category, "output_node": output_node}
    if output_tooltips:
        info["output_tooltips"] = output_tooltips
    return info


def node_schemas(checkpoints: list[str], input_images: list[str]) -> dict[str, dict[str, Any]]:
    """`/object_info` for the node classes the emulator's workflows use."""
    size = {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}
    save_hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    schemas = [
        node_info("CheckpointLoaderSimple",
              {"ckpt_name": [checkpoints, _tip("The name of the checkpoint (model) to load.")]},
              ["MODEL", "CLIP", "VAE"], category="loaders", display="Load Checkpoint",
              description="Loads a diffusion model checkpoint, diffusion models are used to denoise "
                          "latents.",
              output_tooltips=["The model used for denoising latents.",
                               "The CLIP model used for encoding text prompts.",
                               "The VAE model used for encoding and decoding images to and from latent "
                               "space."]),
        node_info("CLIPTextEncode",
              {"text": ["STRING", _tip("The text to be encoded.", multiline=True, dynamicPrompts=True)],
               "clip": ["CLIP", _tip("The CLIP model used for encoding the text.")]},
              ["CONDITIONING"], category="conditioning", display="CLIP Text Encode (Prompt)",
              description="Encodes a text prompt using a CLIP model into an embedding that can be used "
                          "to guide the diffusion model towards generating specific images.",
              output_tooltips=["A conditioning containing the embedded text used to guide the "
                               "diffusion model."]),
        node_info("EmptyLatentImage",
              {"width": ["INT", _tip("The width of the latent images in pixels.", **size)],
               "height": ["INT", _tip("The height of the latent images in pixels.", **size)],
               "batch_size": ["INT", _tip("The number of latent images in the batch.", default=1, min=1,
                                          max=4096)]},
              ["LATENT"], category="latent", display="Empty Latent Image",
              description="Create a new batch of empty latent images to be denoised via sampling.",
              output_tooltips=["The empty latent image batch."]),
        node_info("EmptyHunyuanLatentVideo",
              {"width": ["INT", {"default": 848, "min": 16, "max": MAX_RESOLUTION, "step": 16}],
               "height": ["INT", {"default": 480, "min": 16, "max": MAX_RESOLUTION, "step": 16}],
               "length": ["INT", {"default": 25, "min": 1, "max": MAX_RESOLUTION, "step": 4}],
               "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]},
              ["LATENT"], category="latent/video", module="comfy_extras.nodes_hunyuan"),
        node_info("KSampler",
              {"model": ["MODEL", _tip("The model used for denoising the input latent.")],
               "seed": ["INT", _tip("The random seed used for creating the noise.", default=0, min=0,
                                    max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)],
               "steps": ["INT", _tip("The number of steps used in the denoising process.", default=20,
                                     min=1, max=10000)],
               "cfg": ["FLOAT", _tip("The Classifier-Free Guidance scale balances creativity and "
                                     "adherence to the prompt.", default=8.0, min=0.0, max=100.0,
                                     step=0.1, round=0.01)],
               "sampler_name": [SAMPLERS, _tip("The algorithm used when sampling.")],
               "scheduler": [SCHEDULERS, _tip("The scheduler controls how noise is gradually removed "
                                              "to form the image.")],
               "positive": ["CONDITIONING", _tip("The conditioning describing the attributes you want "
                                                 "to include in the image.")],
               "negative": ["CONDITIONING", _tip("The conditioning describing the attributes you want "
                                                 "to exclude from the image.")],
               "latent_image": ["LATENT", _tip("The latent image to denoise.")],
               "denoise": ["FLOAT", _tip("The amount of denoising applied.", default=1.0, min=0.0,
                                         max=1.0, step=0.01)]},
              ["LATENT"], category="sampling",
              description="Uses the provided model, positive and negative conditioning to denoise the "
                          "latent image.",
              output_tooltips=["The denoised latent."]),
        node_info("VAEDecode",
              {"samples": ["LATENT", _tip("The latent to be decoded.")],
               "vae": ["VAE", _tip("The VAE model used for decoding the latent.")]},
              ["IMAGE"], category="latent", display="VAE Decode",
              description="Decodes latent images back into pixel space images.",
              output_tooltips=["The decoded image."]),
        node_info("VAEEncode", {"pixels": ["IMAGE", {}], "vae": ["VAE", {}]}, ["LATENT"], category="latent",
              display="VAE Encode"),
        node_info("LoadImage", {"image": [input_images, {"image_upload": True}]}, ["IMAGE", "MASK"],
              category="image", display="Load Image"),
        node_info("SaveImage",
              {"images": ["IMAGE", _tip("The images to save.")],
               "filename_prefix": ["STRING", _tip("The prefix for the file to save. This may include "
                                                  "formatting information such as %date:yyyy-MM-dd% or "
                                                  "%Empty Latent Image.width% to include values from "
                                                  "nodes.", default="ComfyUI")]},
              [], category="image", display="Save Image", hidden=save_hidden, output_node=True,
              description="Saves the input images to your ComfyUI output directory."),
        node_info("PreviewImage", {"images": ["IMAGE", {}]}, [], category="image", display="Preview Image",
              hidden=save_hidden, output_node=True, description="Saves the input images to your ComfyUI "
                                                                "output directory."),
        node_info("VHS_VideoCombine",
              {"images": ["IMAGE", {}],
               "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
               "loop_count": ["INT", {"default": 0, "min": 0, "max": 100, "step": 1}],
               "filename_prefix": ["STRING", {"default": "AnimateDiff"}],
               "format": [["image/gif", "image/webp", "video/h264-mp4", "video/nvenc_h264-mp4"], {}],
               "pingpong": ["BOOLEAN", {"default": False}],
               "save_output": ["BOOLEAN", {"default": True}]},
              ["VHS_FILENAMES"], category="Video Helper Suite 🎥🅥🅗🅢", display="Video Combine 🎥🅥🅗🅢",
              optional={"audio": ["AUDIO", {}], "meta_batch": ["VHS_BatchManager", {}], "vae": ["VAE", {}]},
              hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
              output_node=True, module="custom_nodes.ComfyUI-VideoHelperSuite",
              output_names=["Filenames"]),
    ]
    return {schema["name"]: schema for schema in schemas}


GPUS = {  # server_type: (device name, VRAM GB, RAM GB), after api/server-api.md
    "medium": ("cuda:0 Tesla T4 : cudaMallocAsync", 16, 16),
    "large": ("cuda:0 NVIDIA A10G : cudaMallocAsync", 24, 32),
    "extra-large": ("cuda:0 NVIDIA L40S : cudaMallocAsync", 48, 48),
    "2x-large": ("cuda:0 NVIDIA A100-SXM4-80GB : cudaMallocAsync", 80, 96),
    "2xl-turbo": ("cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync", 80, 180),
}

