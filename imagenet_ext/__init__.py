"""imagenet_ext: toydiff's scaling path to class-conditional 64x64 ImageNet.

An ADM-style UNet (Dhariwal & Nichol 2021) with EDM preconditioning (Karras et al. 2022) that obeys
toydiff's denoiser contract `D(x, sigma, cond) -> x0_hat`, so the very same `toydiff.guidance` objects
(CFG, autoguidance, ...) and `toydiff.samplers` drive it. Modules:

  unet.py        the network, named configs (tiny, xs, s, adm64), parameter / FLOP counts
  data.py        ImageNet-64 files, image folders / zips, and the built-in `digits` set
  cache.py       the memory-mapped ImageNet-64 cache, keyed by a fingerprint of its input files
  checkpoint.py  finding and loading checkpoints (written in toydiff.training's one format); shipped ones by name
  config.py      TrainConfig (validated) and the training command line that builds it
  digits.py      the shipped `digits` model (recipe, float16 export) and the classifier that rates its samples
  train.py       `train(TrainConfig)` and `python -m imagenet_ext.train` (toydiff.training's core, DDP via torchrun)
  sample.py      `python -m imagenet_ext.sample` (guided class-conditional sampling, labelled grids, npz)
  inception.py   the FID variant of Inception-v3 (pytorch-fid state-dict layout)
  fid.py         `python -m imagenet_ext.fid` (FID and Inception Score)
  images.py      uint8 conversion, image decoding (16-bit PNGs too) and image grids
"""
