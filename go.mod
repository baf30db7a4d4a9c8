module github.com/vcsnap/vcsnap

go 1.25.0
