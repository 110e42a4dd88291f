"""The EM algorithm and its baselines: E-step statistics (estep) and driver (explore), the policy
on the mesh (policy), the M-step (mstep), the resumable loop (loop), run config and flags."""
