"""The GCD diffusion formulation (gcd_spec.md §1.3–1.7, §2): preconditioning, noise levels, conditioning,
training loss and the jitted EDM sampler. Pure functions + `Conditioner`; see each module's docstring."""
