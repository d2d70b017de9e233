"""The model library: CLIP (`clip`, `tokenization`), STOP's prompts (`stop`, `fft_conv`), TempMe's
frame compressors (`tempme`), token merging inside the ViT (`token_merge`), the two towers
(`clip4clip`), the training loss (`loss`), the factory from configurations (`factory`) and the
errors users can fix (`errors`).

It imports nothing of the project above it (no flags, data loading, engine or apps), so it can be
used on its own: `build_model(clip_state_dict, ModelConfig(...))`.
"""
