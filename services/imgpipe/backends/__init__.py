"""Stage backends that call model servers over HTTP (docs/model-backends.md).

- `oip_detect.OipPetDetector`: `PetDetector` over the Open Inference Protocol v2 (KServe, Triton);
- `openai_generate.OpenAIImagesStylizer`: `Stylizer` over an OpenAI-compatible /v1/images/edits;
- `rembg_matte.RembgMatter`: `Matter` over rembg's HTTP server (/api/remove);
- `resilience`: their shared client (`ResilientHttpClient`) and configuration (`HttpBackendConfig`).

Modules are imported by name (nothing is re-exported here), so a stage loads only its own backend.
"""
