"""Many nodes through Kubernetes: `tracer cluster capture` starts one capture
Job per selected node from the deploy/ templates, waits, copies each node's
capture out with kubectl, and merges them with tracer.analysis.correlate.

Modules, one job each:
    kubectl   the kubectl subprocess, with typed one-line errors
    jobs      deploy/capture-job.yaml -> one Job manifest per node
    capture   start, wait, collect, merge, clean up
"""
