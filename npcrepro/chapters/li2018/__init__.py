"""li2018 (Li et al., BioMed Res. Int. 2018): a 2D CNN with score-map fusion on DCE-MRI."""
