"""Training package for RTVPNet-S: data sets, model, training loop, evaluation, prediction.

May import ``rtvp_edge`` (rig renderer, vocabulary, preprocessing); never imported by it.
"""
