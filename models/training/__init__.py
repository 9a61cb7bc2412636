"""Training the prompter and the segmentor (CPU or CUDA, same code)."""
