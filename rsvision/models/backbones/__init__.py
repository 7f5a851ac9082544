"""LSKNet and HAKSNet backbones, registered with timm on import."""
