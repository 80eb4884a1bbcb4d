"""The command-line client: `modelgw ls|deploy|scale|undeploy|predict|logs|report`.

It talks to a running gateway over HTTP and needs only its address and a
credential from the environment; it never builds the server's Settings, so it
works from any machine that can reach the gateway. Standard library only: it
starts fast and adds nothing to install.
"""
