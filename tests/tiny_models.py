"""One tiny configuration per registered model, shared by the test modules that run every model
(test_contract.py, test_conformance.py): a new model adds its line here and gets all of their tests."""

TINY = {
    "mlvae": dict(content_dim=3, style_dim=3, hidden=16),
    "vae": dict(latent_dim=4, hidden=16),
    "ugvae": dict(num_clusters=3, local_dim=3, global_dim=3, hidden=16, cluster_hidden=8, global_hidden=8),
    "nvae": dict(class_dim=2, shared_dim=3, hidden=16, architecture="mlp"),
    "cvae": dict(latent_dim=3, hidden=16, architecture="mlp"),
    "hfvae": dict(continuous_dim=3, width=0.05),
}
