"""Nested dictionaries read by attention: generators of five forms (nested.generate), the
checks every tree passes (nested.validate), and the layout the JAX reader takes
(nested.build -> kernels.nested)."""
