"""extract-features: plan the images of datasets and dumps, encode them with the frozen CLIP encoder, fill the cache."""
