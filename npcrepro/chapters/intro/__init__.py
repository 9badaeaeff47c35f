"""The introduction: the headline table of every chapter's runs."""
