# The test base image: a Debian root file system made by debootstrap (docker/build-test-images.sh),
# imported without pulling anything.
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8
CMD ["bash"]
