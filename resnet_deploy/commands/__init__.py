"""One module per CLI command; `resnet_deploy.cli` only wires them into the Typer root."""
