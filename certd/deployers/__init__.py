"""Deployers: one Protocol, one implementation per `deployer.type`."""

from certd.config import (
    DeployerConfig,
    FileDeployerConfig,
    SaltDeployerConfig,
    SshDeployerConfig,
)
from certd.deployers.base import Deployer, DeployResult, Target, file_set
from certd.deployers.file import FileDeployer
from certd.deployers.salt import SaltDeployer
from certd.deployers.ssh import SshDeployer


def build(config: DeployerConfig, store=None) -> Deployer:
    """The registry: one branch per config model of the discriminated union."""
    if isinstance(config, FileDeployerConfig):
        return FileDeployer(config)
    if isinstance(config, SshDeployerConfig):
        return SshDeployer(config)
    if isinstance(config, SaltDeployerConfig):
        return SaltDeployer(config, store)  # pull mode keeps its bundle tokens there
    raise TypeError(f"no deployer for {type(config).__name__}")


__all__ = ["Deployer", "DeployResult", "Target", "build", "file_set"]
