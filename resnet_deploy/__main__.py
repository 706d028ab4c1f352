"""`python -m resnet_deploy` is the same as the `resnet-deploy` command."""

from resnet_deploy.cli import main

main()
