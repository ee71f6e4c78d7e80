"""``images.ImageRuntime`` over the CRI image service (what the image cache pulls and removes with)."""

from __future__ import annotations

from proto import cri_pb2 as pb
from sandbox.backend import RegistryCredential
from sandbox.cri.client import CriApi
from sandbox.images import ImageInfo


def auth_config(c: RegistryCredential) -> pb.AuthConfig:
    """The CRI AuthConfig of a credential (what kubelet passes on PullImage)."""
    return pb.AuthConfig(
        username=c.username,
        password=c.password,
        auth=c.auth,
        server_address=c.server_address,
        identity_token=c.identity_token,
        registry_token=c.registry_token,
    )


class CriImageRuntime:
    def __init__(self, client: CriApi) -> None:
        self.client = client

    @staticmethod
    def _info(img: pb.Image) -> ImageInfo:
        return ImageInfo(
            id=img.id,
            size=int(img.size),
            tags=tuple(img.repo_tags),
            digests=tuple(img.repo_digests),
            pinned=bool(img.pinned),
            uid=img.uid.value if img.HasField("uid") else None,
            username=img.username,
        )

    async def status(self, image: str) -> ImageInfo | None:
        img = await self.client.image_status(image)
        return self._info(img) if img is not None else None

    async def pull(self, image: str, credential: RegistryCredential | None = None) -> str:
        return await self.client.pull_image(image, auth=auth_config(credential) if credential else None)

    async def list(self) -> list[ImageInfo]:
        return [self._info(i) for i in await self.client.list_images()]

    async def remove(self, image_id: str) -> None:
        await self.client.remove_image(image_id)
