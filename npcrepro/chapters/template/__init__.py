"""The template chapter: a plain 2D U-Net on one channel, the pattern the paper chapters follow."""
