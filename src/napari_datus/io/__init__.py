"""Reading images and masks, writing masks atomically, and pairing files by stem."""
