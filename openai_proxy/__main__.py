from openai_proxy.cli import main

main()
