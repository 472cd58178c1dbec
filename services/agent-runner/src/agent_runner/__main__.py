from agent_runner.app import main

main()
