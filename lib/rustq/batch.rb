# frozen_string_literal: true

require "securerandom"

module Rustq
  # Batches with Sidekiq Pro's API:
  #
  #   batch = Rustq::Batch.new
  #   batch.description = "Import contacts"
  #   batch.on(:success, ImportDone, "file" => "contacts.csv")   # ImportDone#on_success(status, options)
  #   batch.on(:complete, "ImportDone#finished")
  #   batch.jobs { rows.each { |row| ImportRowJob.perform_async(row) } }
  #   Rustq::Batch::Status.new(batch.bid).pending
  #
  # Nothing pushed inside `jobs { }` is visible to workers until the block ends; then every job
  # and the batch are written in one step. `:complete` fires once every job has run (succeeded,
  # or failed at least once), `:success` once all have succeeded, `:death` the first time one
  # dies; each once, enqueued in the same atomic step as the outcome that makes it happen
  # (rustq_core's `batch` module, the engine's `batch` check point).
  class Batch
    # Jobs added to a batch that is complete (Sidekiq Pro's Sidekiq::Batch::Immutable).
    class Immutable < Error; end
    # No batch with that bid (never made, or its data expired after 30 days).
    class NoSuchBatch < Error; end

    EVENTS = %i[complete success death].freeze

    attr_reader :bid, :callbacks
    attr_accessor :description, :callback_queue

    # A new batch, or with `bid` the existing one (to add jobs to it).
    def initialize(bid = nil)
      @callbacks = Hash.new { |h, k| h[k] = [] }
      if bid
        Status.new(bid) # raises NoSuchBatch
        @bid = bid
        @existing = true
      else
        @bid = SecureRandom.urlsafe_base64(10)
        @existing = false
      end
    end

    # Runs `target` (a Class, whose #on_<event> is called, or "Class#method") with
    # (status, options) when `event` happens.
    def on(event, target, options = {})
      raise ArgumentError, "unknown batch event #{event.inspect}: use one of #{EVENTS.map(&:inspect).join(", ")}" unless EVENTS.include?(event.to_s.to_sym)
      raise ArgumentError, "batch callback options must be a Hash, got #{options.class}" unless options.is_a?(Hash)

      target = target.name if target.is_a?(Module)
      raise ArgumentError, "batch callback must be a Class or \"Class#method\", got #{target.inspect}" unless target.is_a?(String) && !target.empty?

      @callbacks[event.to_s] << [target, JSON.parse(JSON.generate(options))]
      self
    end

    # Pushes made in the block join this batch; all are written, with the batch, when it ends.
    # Returns the jids.
    # A new batch is written (held open) before the block runs, so child batches made in it
    # count in it; it can complete only once the block's jobs are written.
    def jobs
      stack = (Thread.current[:rustq_batches] ||= [])
      parent = stack.last&.first
      definition = JSON.generate(
        "bid" => bid, "description" => description, "callback_queue" => callback_queue,
        "callbacks" => @callbacks, "parent_bid" => parent&.bid
      )
      SidekiqPushes.hook
      opened = !@existing
      Native.batch_add(definition, "open", []) if opened
      @existing = true
      stack.push([self, []])
      begin
        yield
        _, collected = stack.last
      ensure
        stack.pop
      end
      Native.batch_add(definition, opened ? "close" : "add", collected)
      collected.map(&:first)
    end

    def status = Status.new(bid)

    # Sidekiq Pro's invalidation: jobs of the batch that have not started yet are skipped.
    def invalidate_all
      Native.batch_invalidate(bid)
    end

    def valid? = !Native.batch_invalidated?(bid)

    class << self
      def collecting? = !(Thread.current[:rustq_batches] || []).empty?

      # Keeps pushed jobs for the batch being built (Client.raw_push inside `jobs`).
      def collect(item, bulk)
        batch, collected = Thread.current[:rustq_batches].last
        kept = case bulk
               when :payloads then item.flat_map { |payload| Native.batch_prepare(payload, false, batch.bid) }
               else Native.batch_prepare(item, bulk, batch.bid)
               end
        collected.concat(kept)
        kept.map(&:first)
      end
    end

    # A batch's status (Sidekiq::Batch::Status).
    class Status
      attr_reader :bid

      # Rustq::Batch::NoSuchBatch when there is none.
      def initialize(bid)
        @bid = bid
        @data = JSON.parse(Native.batch_status(bid))
      end

      def total = @data["total"]
      def pending = @data["pending"]
      def failures = @data["failures"]
      def description = fields["description"]
      def parent_bid = fields["parent_bid"]
      def callback_queue = fields["callback_queue"]
      def created_at = time("created_at")
      def complete_at = time("complete_at")
      def success_at = time("success_at")
      def death_at = time("death_at")
      def complete? = !fields["complete_at"].nil?
      def success? = !fields["success_at"].nil?
      def jids = Native.batch_members(bid, "jids")
      def failed_jids = Native.batch_members(bid, "failed")
      def dead_jids = Native.batch_members(bid, "dead")
      def data = @data.merge("fields" => fields)

      # Waits until the batch is complete; returns self.
      def join(timeout: nil, interval: 0.2)
        deadline = timeout && Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
        until (fresh = Status.new(bid)).complete?
          break if deadline && Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

          sleep interval
        end
        @data = fresh.instance_variable_get(:@data)
        self
      end

      private

      def fields = @data["fields"]

      def time(field)
        value = fields[field]
        value && Time.at(value.to_f)
      end
    end

    # The job that runs a batch's callback: args = [event, bid, target, options].
    class Callback
      include Rustq::Job

      def perform(event, bid, target, options)
        class_name, method = target.split("#", 2)
        receiver = Object.const_get(class_name).new
        receiver.public_send(method || "on_#{event}", Status.new(bid), options)
      end
    end
  end

  # Every batch, newest first (Sidekiq::BatchSet).
  class BatchSet
    include Enumerable

    def each(&block)
      Native.batch_all.each do |bid|
        block.call(Batch::Status.new(bid))
      rescue Batch::NoSuchBatch
        next # expired since it was listed
      end
    end

    def size = Native.batch_all.size
  end
end
