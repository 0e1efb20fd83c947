"""Copy-paste synthesis: real cutouts of each class pasted on real backgrounds, with their instance
masks. A study for issue #15 found that 5 real cutouts per class pasted this way trained a better
classifier than Stable Diffusion images, at a fraction of the cost and with exact masks for free."""
