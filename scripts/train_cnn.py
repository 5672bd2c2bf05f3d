"""Train an image classifier (digits, CIFAR-10/100, ImageNet), dense or sparse, in one process or
under DeepSpeed:

    python scripts/train_cnn.py --recipe recipes/cnn_dst_ee.yaml                      # bundled digits
    python scripts/train_cnn.py --dataset cifar10 --data_dir /data/cifar --model cifar_vgg19 \\
        --epochs 160 --recipe recipes/cnn_dst_ee.yaml
    deepspeed --num_accelerators 2 scripts/train_cnn.py --deepspeed_config ds_configs/cnn_cifar_zero2.json \\
        --recipe recipes/cnn_dst_ee.yaml

`python scripts/train_cnn.py --help` lists every option.
"""
import sys

from gsparse.tasks.vision.cli import main

if __name__ == "__main__":
    sys.exit(main())
