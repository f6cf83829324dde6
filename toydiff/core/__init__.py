"""The contract shared with imagenet_ext: the denoiser protocol, guidance, samplers, the training core and the
checkpoint format. Imports nothing from toy, bench or app."""
