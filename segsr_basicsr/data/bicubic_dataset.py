"""HR-only dataset that makes the bicubic LR on the fly, so one HR copy serves x2, x3, x4, ..."""
import os.path as osp

from torch.utils import data as data
from torchvision.transforms.functional import normalize

from basicsr.data.data_util import paths_from_lmdb
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from segsr_basicsr.registry import register

from segsr_basicsr.data.prep import hr_lr_pair
from segsr_basicsr.errors import ImageError, OptionError
from segsr_basicsr.io.images import decode_image, list_images


@register(DATASET_REGISTRY)
class SeGSRBicubicDataset(data.Dataset):
    """Read HR images (folder, meta_info file or LMDB) and make LR = MATLAB bicubic x1/scale.

    The HR is mod-cropped to the scale and the WHOLE image is downscaled before cropping,
    then rounded to 8 bit exactly like ``datasets_prep/make_bicubic.py`` writes its PNGs: the LR
    a model sees here is bit-identical to the prepared LR file, so training on either is the
    same experiment. (Downscaling whole images costs time on big scenes: cut them with
    ``datasets_prep/extract_subimages.py`` first.)

    Returns ``{'lq', 'gt', 'lq_path', 'gt_path'}`` like PairedImageDataset (both paths are the
    HR path/key), so it also works as a val/test set: phase != 'train' means mod-crop, no
    crop or augmentation.

    Options (BasicSR style): dataroot_gt, io_backend {type: disk | lmdb}, meta_info_file
    (disk only, optional: first word of each line is a file name in dataroot_gt), scale,
    phase, gt_size, use_hflip, use_rot, color ('y'), mean, std; input rules of
    :func:`segsr_basicsr.io.images.decode_image`: bands, max_value, gray ('convert'|'error').
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.file_client = None
        self.io_backend_opt = dict(opt['io_backend'])
        self.gt_folder = str(opt['dataroot_gt'])
        self.mean, self.std = opt.get('mean'), opt.get('std')
        if opt.get('phase') == 'train' and opt['gt_size'] % opt['scale']:
            raise OptionError(f"{type(self).__name__}: gt_size {opt['gt_size']} is not a multiple of scale "
                             f"{opt['scale']}; the LR patch would not match the HR patch.")
        if self.io_backend_opt['type'] != 'lmdb' and self.gt_folder.endswith('.lmdb'):
            raise OptionError(f'{self.gt_folder}: is an LMDB; set io_backend: {{type: lmdb}}.')
        self.image_kw = dict(bands=opt.get('bands'), max_value=opt.get('max_value'), gray=opt.get('gray', 'convert'))
        if self.io_backend_opt['type'] == 'lmdb':
            self.io_backend_opt['db_paths'] = [self.gt_folder]
            self.io_backend_opt['client_keys'] = ['gt']
            self.paths = paths_from_lmdb(self.gt_folder)
        elif opt.get('meta_info_file'):
            with open(opt['meta_info_file']) as f:
                self.paths = [osp.join(self.gt_folder, line.split()[0]) for line in f if line.strip()]
        else:
            self.paths = [osp.join(self.gt_folder, f) for f in list_images(self.gt_folder)]
        if not self.paths:
            raise OptionError(f'{self.gt_folder}: no HR images found for {type(self).__name__}.')

    def __getitem__(self, index):
        if self.file_client is None:
            self.file_client = FileClient(self.io_backend_opt.pop('type'), **self.io_backend_opt)
        scale = self.opt['scale']
        gt_path = self.paths[index]
        name = f'{self.gt_folder}:{gt_path}' if self.file_client.backend == 'lmdb' else gt_path
        content = self.file_client.get(gt_path, 'gt')
        if content is None:
            raise ImageError(f'{name}: key listed in meta_info.txt but missing from the LMDB.')
        img_gt = decode_image(content, name, **self.image_kw)
        if self.opt['phase'] == 'train':
            gt_size = self.opt['gt_size']
            if min(img_gt.shape[:2]) < gt_size:
                raise ImageError(f'{name}: {img_gt.shape[1]}x{img_gt.shape[0]} is smaller than gt_size {gt_size}; '
                                 'lower gt_size or remove the file (it is not stretched).')
        img_gt, img_lq = hr_lr_pair(img_gt, scale, name)
        img_gt, img_lq = img_gt.astype('float32') / 255., img_lq.astype('float32') / 255.
        if self.opt['phase'] == 'train':
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.opt['gt_size'], scale, gt_path)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
        if self.opt.get('color') == 'y':
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': gt_path, 'gt_path': gt_path}

    def __len__(self):
        return len(self.paths)
