from inference_bundle.ops.cli import main

main()
