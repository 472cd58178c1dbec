from mcp_proxy.app import main

main()
