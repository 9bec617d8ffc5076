"""Custom distributions of pyro_groupvae (each with ``expand``, ``rsample``/``sample``, ``log_prob`` and the KLs
the models need registered)."""
from .concrete import ExpConcrete
from .dirichlet_prior import DirichletClassPrior, class_bound_terms, dirichlet_kl, surrogate_class_term
from .group_normal import MixtureOfNormals, ProductOfNormals, group_sizes, product_of_normals, segment_logsumexp

__all__ = ["ProductOfNormals", "MixtureOfNormals", "product_of_normals", "segment_logsumexp", "group_sizes",
           "DirichletClassPrior", "dirichlet_kl", "class_bound_terms", "surrogate_class_term", "ExpConcrete"]
