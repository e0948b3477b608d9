# frozen_string_literal: true

module Rustq
  # Pushes jobs in Sidekiq's hash shape:
  #
  #   Rustq::Client.push("class" => HardJob, "args" => [1, "two"], "queue" => "critical")
  #   Rustq::Client.push_bulk(class: "HardJob", args: [[1], [2]], at: [t1, t2])
  #
  # Keys may be Strings or Symbols; "class" a Class or a String. Any other key ("retry", "tags",
  # "bid", ...) is written as given. Arguments must be native JSON types (Sidekiq 7's rule): a
  # bad push raises Rustq::InvalidJob (an ArgumentError) with Sidekiq's message and writes nothing.
  module Client
    class << self
      # Pushes one job and returns its jid (nil when a client middleware stopped it, or when it is
      # a unique job whose lock another job holds: Rustq::NotUnique if its class says
      # `unique_conflict: :raise`).
      def push(item)
        item = normalize(item)
        conflict = item["unique_conflict"]
        item = Limits.resolve(item)
        chain = ClientMiddleware.chain
        if chain
          item = ClientMiddleware.call(chain, item["class"], JSON.parse(Native.prepare(item, false).first))
          return unless item
        end
        jid = raw_push(item, false).first
        not_unique(item) if jid.nil? && conflict.to_s == "raise"
        jid
      end

      # Pushes many jobs of one class: "args" is an Array of Arrays, "at" (optional) one time or
      # one per job. Returns the jids in order (nil for a job a client middleware stopped).
      def push_bulk(items)
        item = normalize(items)
        return push_each(item) if Limits.per_job?(item)

        item = Limits.resolve(item)
        chain = ClientMiddleware.chain
        return raw_push(item, true) unless chain

        # With middleware, each job may differ from the next: the ones it lets through are
        # written one by one, in one round trip.
        payloads = Native.prepare(item, true).map { |json| ClientMiddleware.call(chain, item["class"], JSON.parse(json)) }
        kept = payloads.compact
        jids = kept.empty? ? [] : raw_push(kept, :payloads).each
        payloads.map { |payload| payload && jids.next }
      end

      private

      # A bulk push whose limit keys (or unique_by) depend on each job's arguments: each job
      # resolved alone, all written in one round trip.
      def push_each(item)
        args = item["args"]
        raise InvalidJob, "Bulk arguments must be an Array of Arrays: [[1], [2]]" unless args.is_a?(Array) && args.all?(Array)

        at = item["at"]
        raise InvalidJob, "Job 'at' Array must have same size as 'args' Array" if at.is_a?(Array) && at.size != args.size
        # As the native client says for a bulk push of unique jobs with one 'at' each.
        raise InvalidJob, "Unique jobs cannot be bulk pushed with one 'at' per job: push them one by one, or with one 'at' for all" if at.is_a?(Array) && item["unique_for"]

        chain = ClientMiddleware.chain
        payloads = args.each_with_index.map do |job_args, index|
          job = item.merge("args" => job_args)
          job["at"] = at[index] if at.is_a?(Array)
          job = Limits.resolve(job)
          chain ? ClientMiddleware.call(chain, item["class"], JSON.parse(Native.prepare(job, false).first)) : job
        end
        kept = payloads.compact
        jids = kept.empty? ? [] : raw_push(kept, :payloads).each
        payloads.map { |payload| payload && jids.next }
      end

      def not_unique(item)
        raise NotUnique, "#{item["class"]} not pushed: a job with the same class, queue and arguments holds its unique lock (unique_for #{item["unique_for"]} s)"
      end

      # The one place a push leaves Ruby; Rustq::Testing replaces it with in-memory queues.
      # `bulk`: false (one job), true (a bulk item) or :payloads (an Array of jobs, each
      # written as its own push, all in one round trip).
      def raw_push(item, bulk)
        # Inside a batch's `jobs` block: kept for the batch, written with it when the block ends.
        return Batch.collect(item, bulk) if Batch.collecting?

        jids = case bulk
               when :payloads then Native.push_payloads(item)
               when true then Native.push_bulk(item)
               else [Native.push(item)]
               end
        first = bulk == :payloads ? item.first : item
        Rustq.logger.debug { "rustq: pushed #{jids.size} #{first["class"]} job(s) to #{first["queue"] || "default"}" }
        announce(first, jids) unless first["wrapped"] # ActiveJob's own enqueue.active_job says it
        jids
      end

      # enqueue.rustq (Instrumentation): one event per push call, with the jids it wrote.
      def announce(first, jids)
        Instrumentation.notify("enqueue.rustq") do
          {class: first["class"].to_s, jids: jids, queue: first["queue"] || "default", at: first["at"]}
        end
      end

      # Sidekiq's normalize_item, Ruby half: the job class's options (and the ActiveJob class's,
      # when "wrapped" has any) go first, then the caller's keys. The native half validates and
      # fills in jid/created_at.
      def normalize(item)
        raise InvalidJob, "Job must be a Hash with 'class' and 'args' keys" unless item.is_a?(Hash)

        item = item.transform_keys(&:to_s)
        defaults = options_of(item["class"])
        wrapped = options_of(item["wrapped"])
        defaults = (defaults || Rustq.default_job_options).merge(wrapped) if wrapped
        TraceContext.inject(defaults ? defaults.merge(item) : item)
      end

      def options_of(klass)
        return unless klass.is_a?(Module)
        return klass.get_rustq_options if klass.respond_to?(:get_rustq_options)

        klass.get_sidekiq_options if klass.respond_to?(:get_sidekiq_options)
      end
    end
  end
end
