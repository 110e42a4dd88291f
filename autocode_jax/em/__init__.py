"""The EM algorithm: E-step statistics and curation (M-step driver and loop to come)."""
