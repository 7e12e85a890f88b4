"""Model parts (stem, tail, attention branch), occlusion, losses and the three stage models."""
