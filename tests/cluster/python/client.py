"""The official Kubernetes Python client against keelson: create, list, watch and
delete pods and deployments. Prints one line per step; exits non-zero on any failure."""

import sys
import threading

from kubernetes import client, config, watch


def main(kubeconfig: str) -> None:
    config.load_kube_config(config_file=kubeconfig)
    core, apps = client.CoreV1Api(), client.AppsV1Api()
    ns = "py"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    print("namespace created")

    # A watch on pods, opened before the changes it must see.
    seen = []
    started = threading.Event()

    def follow():
        w = watch.Watch()
        started.set()
        for event in w.stream(core.list_namespaced_pod, ns, timeout_seconds=20):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=follow)
    t.start()
    started.wait()

    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p1", labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox:1.36", command=["sleep", "60"])]),
    )
    import time
    time.sleep(1)
    created = core.create_namespaced_pod(ns, pod)
    assert created.metadata.uid and created.metadata.resource_version, created.metadata
    print("pod created", created.metadata.name)
    pods = core.list_namespaced_pod(ns, label_selector="app=py")
    assert [p.metadata.name for p in pods.items] == ["p1"], pods.items
    print("pods listed", len(pods.items))
    core.patch_namespaced_pod("p1", ns, {"metadata": {"labels": {"seen": "yes"}}})
    core.delete_namespaced_pod("p1", ns)
    print("pod deleted")
    t.join(timeout=30)
    # The label patch is a MODIFIED; the scheduler may add its own (no node fits here).
    assert seen[0] == ("ADDED", "p1") and seen[-1] == ("DELETED", "p1") and ("MODIFIED", "p1") in seen, seen
    print("watch saw", seen)

    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="d1"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "d1"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "d1"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="nginx:1.25")]),
            ),
        ),
    )
    made = apps.create_namespaced_deployment(ns, deployment)
    assert made.spec.replicas == 2 and made.metadata.generation == 1
    print("deployment created")
    listed = apps.list_namespaced_deployment(ns)
    assert [d.metadata.name for d in listed.items] == ["d1"]
    print("deployments listed", len(listed.items))
    try:
        apps.create_namespaced_deployment(ns, deployment)
        raise SystemExit("a second create of the same name was accepted")
    except client.exceptions.ApiException as e:
        assert e.status == 409, e
        print("conflict", e.status, e.reason)
    apps.delete_namespaced_deployment("d1", ns)
    assert apps.list_namespaced_deployment(ns).items == []
    print("deployment deleted")
    core.delete_namespace(ns)
    print("done")


if __name__ == "__main__":
    main(sys.argv[1])
