"""A fake Kubernetes API server for the identity tests: PyPI `kmock`'s
KubernetesEmulator (list, watch, get of any built-in resource), bound to
127.0.0.1 on a free port, preloaded with the objects in a JSON file.

A stand-in, because no kube-apiserver can run on the test machine. What it
does not do, a real cluster would: honour `fieldSelector` (kmock returns
every pod, so the agent must filter by node itself — which the test
checks), enforce RBAC, send bookmarks, and expire resourceVersions (410).

usage: fake_kube.py OBJECTS.json   → prints {"ready": true, "url": …} once serving
"""

import asyncio
import json
import sys

import kmock


async def main():
    with open(sys.argv[1]) as f:
        objects = json.load(f)
    emulator = kmock.KubernetesEmulator()
    async with emulator, kmock.Server(emulator) as server:
        for obj in objects:
            api = obj["apiVersion"]
            base = "/api/v1" if api == "v1" else f"/apis/{api}"
            plural = obj["kind"].lower() + "s"
            ns = obj["metadata"]["namespace"]
            r = await server.client.post(f"{base}/namespaces/{ns}/{plural}", json=obj)
            if r.status != 200:
                raise SystemExit(f"creating {obj['kind']} failed: {r.status} {await r.text()}")
        print(json.dumps({"ready": True, "url": str(server.url).rstrip("/")}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
