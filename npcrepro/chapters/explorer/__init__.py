"""The explorer page: every chapter's newest predictions over the images, in a static viewer."""
