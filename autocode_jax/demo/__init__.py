"""The embedded CPU default's driver (driver.py): a warm start, then EM, the on-policy RL
baseline and SFT on the generated task (data.synthetic), compared; above em and eval."""
