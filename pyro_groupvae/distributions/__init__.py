"""Custom distributions of pyro_groupvae."""
from .group_normal import MixtureOfNormals, ProductOfNormals, group_sizes, product_of_normals, segment_logsumexp

__all__ = ["ProductOfNormals", "MixtureOfNormals", "product_of_normals", "segment_logsumexp", "group_sizes"]
from .dirichlet_prior import DirichletClassPrior, class_bound_terms, dirichlet_kl, surrogate_class_term  # noqa: E402
from .concrete import ExpConcrete  # noqa: E402
