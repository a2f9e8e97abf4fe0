"""A fake ``kaggle_secrets`` module (Kaggle notebooks' secret store) following the real API:
``UserSecretsClient().get_secret(label)``, raising ``BackendError`` for an unknown label."""

from __future__ import annotations

import types


def make_kaggle_secrets(secrets: dict[str, str]) -> types.ModuleType:
    mod = types.ModuleType("kaggle_secrets")

    class BackendError(Exception):
        pass

    class UserSecretsClient:
        def get_secret(self, label: str) -> str:
            if label not in secrets:
                raise BackendError(f"Unexpected response from the service. Response: {{'errors': ['No user secrets exist for kernel id 1 and label {label}']}}")
            return secrets[label]

    mod.BackendError = BackendError
    mod.UserSecretsClient = UserSecretsClient
    return mod
