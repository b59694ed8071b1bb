//! imgfs: neuroimaging images held in memory, shown to external tools as files.
//!
//! Data flows one way: [`format`] decodes files into headers and voxel bytes, [`image`] holds
//! them and knows whether they still match their original, [`render`] lays an image out as a
//! single-file NIfTI by byte range, [`catalog`] keeps the named images and their served
//! versions, [`vfs`] keeps what the kernel was told (inodes, handles, listings), [`fuse`]
//! translates kernel requests onto it, and [`control`] lets other processes drive it;
//! [`progress`] carries how far a long operation has got. [`mount`] puts these together as the
//! Rust API and the daemon, and
//! [`cli`] is the command line.

pub mod catalog;
pub mod cli;
pub mod control;
pub mod fault;
pub mod format;
pub mod fuse;
pub mod fusermount;
pub mod image;
pub mod mount;
pub mod mountinfo;
pub mod progress;
pub mod render;
pub mod vfs;
pub mod written;
