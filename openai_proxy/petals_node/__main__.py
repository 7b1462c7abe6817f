from openai_proxy.petals_node.options import main

main()
